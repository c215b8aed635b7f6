"""``raydet serve``: one model of a RUN behind HTTP, in Ray Serve replicas that batch concurrent requests.

Owns: the HTTP contract (``POST /detect``, ``GET /health``, ``GET /model``), request parsing and its 4xx answers
(:mod:`raydet.serve.http`, no Ray), the Serve deployment and the application builder that ``serve deploy`` and
``serve run`` import (:mod:`raydet.serve.app`: ``raydet.serve.app:build``), and the command that starts it on a
local Ray or a cluster and keeps it until Ctrl-C (:mod:`raydet.serve.driver`).

May import: ``raydet.config``, ``raydet.errors``, ``raydet.images``, ``raydet.draw``, ``raydet.predict`` (the
per-image core :func:`raydet.predict.detect`, shared so a request's detections are ``raydet predict``'s),
``raydet.infer``, ``raydet.storage``, ``raydet.runtime``; Ray Serve only in :mod:`raydet.serve.app` (loaded when
the command runs, never by ``import raydet`` or ``import raydet.serve``).
"""
