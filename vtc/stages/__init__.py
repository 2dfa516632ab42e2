"""The stages of the flow, each a function with typed inputs and outputs::

    load ─► export ─► compress ─► compile ─► validate ─► bundle

`vtc.pipeline` calls them in order for one graph; `vtc sweep` runs the pipeline per
point and uses `load` alone to check every budget first.
"""
