"""Producers: cameras and photo folders in, frames and tasks into Redis out.

``camera`` (several cameras per process, bounded in-flight, back-off), ``sources``
(USB / RTSP / HTTP / video files, fps sampling), ``folder`` (one identify task per
photo). Producers never import the pipeline or TensorFlow: tasks go out by name.
"""
