"""Where the API's studies come from (``store.base.Store``): the local archive
(``store.local``), and later an upstream PACS."""
