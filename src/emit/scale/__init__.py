"""Batch jobs past one process: image features written as Parquet shards, by a local engine or on
a Ray cluster (Ray Data ``map_batches`` with an actor pool).

* :mod:`~emit.scale.inputs`: image files, folders and manifests -> one sorted list of paths;
* :mod:`~emit.scale.shards`: the shard layout, schema, metadata keys, atomic writes and reads;
* :mod:`~emit.scale.extract`: :class:`~emit.scale.extract.ExtractBatch`, the one callable class
  that turns a batch of paths into feature rows (both engines run it);
* :mod:`~emit.scale.writer`: ``ExtractJob`` (the job's settings) and the ``ShardWriter`` that
  both engines hand their rows to;
* :mod:`~emit.scale.jobs`: ``extract_to_shards``, the job (plan, skip finished shards, run an
  engine, summary) and the local engine;
* :mod:`~emit.scale.ray_engine`: the same job on Ray Data (Ray is imported only there).

Nothing here is imported by ``emit --help``: the command imports it when it runs.
"""
