"""Tools for tests and benchmarks (test servers, message generators). Not used by the product."""
