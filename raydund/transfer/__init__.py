"""Efficient transfer (paper section 7): LayerSelector + CCFS, the reduced deployable model, timing, the job."""
