"""LLaVA-style vision-language models: the checkpoint (`llava`), vtc's exportable
modules (`modules`: vision encoder + projector with its cuts, token embeddings, prefill
and decode with a key/value cache), the eager reference driven through Hugging Face's own
modules (`reference`) and the export of the graphs (`export`)."""
