"""The example-workflow generator behind scripts/build_workflows.py, one module per job.

- graph.py       `Graph`, `Node`, `Out`: a workflow written once as an API-format graph;
- blocks.py      model file names, colours, the read-me note (Markdown; its files list from
                 scripts/weights_table.py) and the sub-graphs every workflow shares (FLUX loaders, DreamO
                 loader, reference chain, sampler tails);
- dreamo.py, syncd.py, aligngen.py
                 the workflow definitions, by method; catalog.py lists them in build order;
- node_defs.py   one node's /object_info entry: widget order, slots, outputs;
- api_format.py  API graph with every widget filled in and validated against the definitions;
- layout.py      the UI layout: each node's group by role, groups in columns, sizes, the saved view (extra.ds)
                 and the readable-scale threshold;
- ui_format.py   litegraph (UI) graph: links, widgets_values as the frontend serializes them, groups, the
                 MarkdownNote, positions and view from layout.py;
- checks.py      checks of both formats against /object_info;
- images.py      procedural reference images (workflows/inputs/) and template thumbnails;
- files.py       every generated file as bytes (deterministic JSON, PNG, JPEG).

The /object_info comes from a headless server started by scripts/headless.py (the entry does that).
"""
