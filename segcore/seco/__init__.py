"""SeCo (semantic connectivity-driven pseudo-labelling) on any stage's hard pseudo-labels.

One module per concern:

* ``confident``: the base stage's confident pixels (top fraction by confidence, per class);
* ``regions``: the stuff / thing split and the region-proposer interface;
* ``classical``: the proposer without SAM (superpixels for stuff, grown components for things);
* ``sam``: the SAM proposer (``segment_anything``) and its checkpoint loader;
* ``psa``: pixel semantic aggregation (the majority rule, thing prompts, uncovered = ignore);
* ``components``: 8-connected components of a label map;
* ``classifier``: the connectivity classifier (ResNet with the component mask after the stem)
  and its crops;
* ``scc``: semantic connectivity correction (per-component loss, GMM or median rule, rendering);
* ``refined_store``: the HDF5 store of PSA / SCC labels (coverage and proposer in its metadata);
* ``quality``: per-class precision and coverage of label sets against ground truth.
"""
