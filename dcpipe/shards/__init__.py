"""The shard format: WebDataset tars, their stats, the collection manifest and the plan."""
