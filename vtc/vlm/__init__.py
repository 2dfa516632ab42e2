"""Vision-language models: the families (`families`: model_type → module; `llava`: the
checkpoint), vtc's exportable vision modules with the encoder cuts and VisionZip
(`modules`), the cut plan (`plan`), the embedding graph (`embedding`), the decoder from
onnxruntime-genai's model builder and vtc's passes on it (`decoder`), the HF-driven eager
reference (`reference`) and the export of the vision graphs (`export`)."""
