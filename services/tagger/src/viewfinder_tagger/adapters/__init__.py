"""What talks to the outside: the catalogue, object storage, model services, Kafka."""
