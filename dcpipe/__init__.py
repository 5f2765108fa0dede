"""dcpipe: DeepCluster as a streaming, restartable pipeline over WebDataset shards.

Data flows one way: sources -> shards -> features -> labels -> model -> next round's features.
`dcpipe.shards` is the shard format, `dcpipe.stages` one package per stage, `dcpipe.pipeline`
the workspace, rounds and the CLI.
"""
