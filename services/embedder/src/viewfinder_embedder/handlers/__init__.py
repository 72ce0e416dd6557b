"""Kafka subscribers and gRPC servicers: thin, they translate and delegate to domain/."""
