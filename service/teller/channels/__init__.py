"""MPP session payment channels (TIP-1034 v2) as Teller keeps them: each
channel's deposit, the highest voucher signed on it, and every voucher.

``rules`` holds what a voucher may be (pure); ``store`` keeps channels and
vouchers in the database and signs each voucher under the channel's row lock,
so any number of workers sign one channel's vouchers in one strictly
increasing sequence that never passes its deposit. The protocol pieces
(descriptor, channel id, voucher typed data, escrow calls) are
``teller.mpp.channel``; the wire format is ``teller.mpp.session``.
"""
