"""What several stages share: models, image decoding, the feature store, the label index,
whitening, metrics, activations."""
