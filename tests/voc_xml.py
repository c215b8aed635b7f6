"""VOC XML written by hand for the tests: an annotation, an object, a box (pixel xyxy)."""


def xml(
    objects: str = "",
    *,
    filename: str = "a.jpg",
    size: str = "<size><width>100</width><height>50</height><depth>3</depth></size>",
) -> bytes:
    return f"<annotation><folder>images</folder><filename>{filename}</filename>{size}{objects}</annotation>".encode()


def obj(
    name: str = "cat",
    box: str = "<bndbox><xmin>10</xmin><ymin>5</ymin><xmax>30</xmax><ymax>25</ymax></bndbox>",
    extra: str = "",
) -> str:
    return f"<object><name>{name}</name>{extra}{box}</object>"


def bb(x0, y0, x1, y1) -> str:
    return f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>"
