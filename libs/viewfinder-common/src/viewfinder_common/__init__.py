"""Shared runtime of the viewfinder services.

One place for what every service needs: settings, structured logging, the Kafka
broker and dead-letter helper, event encoding, the PostgreSQL pool and
migrations, the S3 client and the gRPC server builder.
"""
