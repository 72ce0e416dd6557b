"""viewfinder exporter service: Writes search results as manifest files to a bucket or as logical dataset versions."""
