"""Video processor and processor for VideoMamba (installed as `modeling_videomamba.processors`)."""
