"""The suite's tooling behind the scripts in tools/: dataset derivation, results tables, benchmarks
and order pictures. It may import semaim_core, det, seg and cls; none of them imports it."""
