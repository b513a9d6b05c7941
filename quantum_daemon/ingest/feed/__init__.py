"""The exchange bar feed: closed bars from a ccxt exchange onto the bar
streams (docs/feed.md).

``service.FeedService`` is the loop (standalone: ``commands/feed.py``; in the
daemon: the ``feed`` loop when ``[feed] enabled``), ``exchange`` the only
module that imports ccxt, ``plan`` the pure decisions (which bars are closed,
where a series resumes, when to ask next), ``publish`` the XADDs. Nothing
here is imported by the daemon unless the feed is enabled, so ccxt (the
``feed`` extra) loads only then.
"""
