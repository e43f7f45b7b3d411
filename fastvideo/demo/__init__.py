"""The gradio web demo: ``python fastvideo/demo/gradio_web_demo.py --help``."""
