"""The drivers that answer a Sign batch's requests (``teller.sign.batch_io``)."""
