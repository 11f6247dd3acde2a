"""Pure loss functions: tensors in, tensors out, no model calls and no module state."""
