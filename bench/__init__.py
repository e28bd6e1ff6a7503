"""chatplane's benchmarks (`make bench` = `python -m bench`): measurements of the real stack, not
tests. Each benchmark is a module with `async def run(options: Options) -> list[Row]` (see
`bench.harness.Options` and `bench.report.Row`), registered in `bench.__main__.BENCHMARKS`; the
rows of all benchmarks are printed as one table per benchmark, with targets and pass/fail.
docs/benchmarks.md says what each number means and how it is measured."""
