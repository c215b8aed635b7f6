"""raydet.cluster.sizes: one size format for every table."""

from raydet.cluster.sizes import format_size


def test_format_size_is_decimal_everywhere():
    # 616,600 B / 1,000 = 616.6 kB; 2,430,000 B / 1,000,000 = 2.43 MB; under 1,000 B plain bytes
    assert (format_size(616_600), format_size(2_430_000), format_size(999), format_size(None)) == (
        "616.6 kB",
        "2.43 MB",
        "999 B",
        "-",
    )
