"""From PDFs and page images to searchable chunks through the served models.

`sources`: which files, and each page as pixels plus PDFium's text layer. `models`: the Triton calls
(yolox_page_elements, eclair, caption_selection, e5_small_v2_text) over gRPC. `chunks`: lines,
captions' candidates and chunking. `store`: LanceDB (embedded) and its Parquet export.
`pipeline`: the stages on thread pools, the progress bar and the rates. `commands`: what
`python -m scripts.stack ingest|search` call.
"""
