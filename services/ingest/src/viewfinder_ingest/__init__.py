"""viewfinder ingest service: Registers bucket prefixes as versioned datasets, syncs them and turns bucket changes into FileDiscovered events."""
