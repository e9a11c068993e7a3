"""Readers, one module per input format, each a generator of validated input items
(`validate.InputItem`: a Document or a Reject) read in bounded memory; `formats` picks
one by --format or by the file's name."""
