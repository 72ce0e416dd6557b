"""What talks to the outside: the model runtimes, the decode pool, S3, the catalogue tables."""
