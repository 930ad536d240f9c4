"""Using a trained model: loading it, predicting (one record for the CLI and the pages), Grad-CAM, and export
to safetensors or ONNX with its model card. Never imports the training layer."""

__all__ = ["explain", "export", "inference", "modelcard", "prediction"]
