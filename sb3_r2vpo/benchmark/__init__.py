"""Benchmark runner: R2VPO against PPO, TRPO and SPO on suites of tasks, with rliable reports.

python -m sb3_r2vpo.benchmark run --suite quick --seeds 0 1 2 3 4 --jobs 2
python -m sb3_r2vpo.benchmark report
"""
