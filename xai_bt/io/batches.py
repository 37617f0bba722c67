"""TEMPORARY re-export of the old `xai_bt.io.batches` names, until the last importers move to the modules
that now hold them: `listing` (file lists), `shards`, `stream` (tf.data batches), `atomic` (atomic writes)
and `index` (the resumable index). Delete this file once nothing imports it."""
from xai_bt.io.atomic import (TMP_SUFFIX, fsync_dir, move_atomic, sweep_temporaries, temp_dir, temp_owner,  # noqa: F401
                              write_atomic)
from xai_bt.io.index import IndexFile  # noqa: F401
from xai_bt.io.listing import list_inputs, read_list  # noqa: F401
from xai_bt.io.shards import index_name, parse_shard, shard_indexes, shard_positions  # noqa: F401
from xai_bt.io.stream import Batch, one_line, stream  # noqa: F401
