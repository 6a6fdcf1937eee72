"""Regularizers: loss terms added to the one loss (`compute_loss`'s terms) from what a forward pass left."""
