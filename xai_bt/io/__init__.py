"""Files at archive scale: listing inputs, sharding, streaming batches, resumable indexes, atomic writes."""
