"""Reading an m3pipe output back as bge-m3 intends: hybrid search and its evaluation."""
