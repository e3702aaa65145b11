// Benchmarks entry point; suites land with the volume and target work.
return 0;
