"""Media in and out, with no model knowledge: decoding with frame timing, colour conversion (HDR to
SDR), resize and crop, and writing mp4 files.

    from fastvideo.media.video import FrameSpec, load_media, write_video
"""
