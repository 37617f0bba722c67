"""Files at archive scale, one job per module: `listing` (which files), `shards` (who does which), `stream`
(tf.data batches), `atomic` (atomic writes), `index` (the resumable index), `explanation_files` (one scan's
figures and sidecar), `explain_files` (the resumable, shardable explain run over many scans) and
`predict_files` (predictions for many scans)."""
