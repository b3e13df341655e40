"""``idcfs serve``: the tree as a read-only WebDAV share (wsgidav on cheroot), which macOS Finder,
Windows Explorer, davfs2, rclone and curl mount or read with no kernel extension."""
