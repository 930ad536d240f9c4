"""Using a trained model: loading it, predicting (one record for the CLI and the pages; folders of any size
streamed in batches), Grad-CAM, and export to safetensors or ONNX with its model card. Never imports the training
layer."""

__all__ = ["batchsummary", "explain", "export", "inference", "modelcard", "prediction", "stream"]
