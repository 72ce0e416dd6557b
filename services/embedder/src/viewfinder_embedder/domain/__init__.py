"""The logic, free of I/O frameworks and unit-tested."""
