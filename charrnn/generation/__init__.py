"""Generation from a trained model: the compiled sampling loop (sampler, with the options
of charrnn.sampling) and its exports: SavedModel and TFLite (exporter), a web page
(webexport), the files they write (exportfiles). Imports from charrnn's shared modules,
charrnn.text, charrnn.nn and charrnn.run."""
