"""netcheck benchmarks: ``python -m bench [--quick]`` (root, for the namespaces).

Sections: wide sweep against nmap and the physical floor, controller ingest, agent footprint
and the full HDM audit in the lab against nmap and blackbox_exporter. Results are printed as
Markdown and written to ``bench/results/<date>.md`` and ``bench/results/latest.md``.
"""
