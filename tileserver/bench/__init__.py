"""Benchmark harness: viewer traces, an async load client, comparator servers, reports.

``traces`` is pure tile-request math; ``client`` is the only HTTP client (aiohttp);
``load`` runs traces through it and summarises; ``comparators`` starts reference servers
in subprocesses; ``report`` writes JSON, Markdown and plots; ``cli`` adds ``tileserver bench``.
"""
