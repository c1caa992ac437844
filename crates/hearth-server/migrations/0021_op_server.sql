-- The server running a workspace's operation while its state is transitional (creating,
-- starting, stopping, removing): its id in `servers`. NULL when settled (and on rows
-- from before servers shared a database); '' for an operation whose server restarted.
-- The leader finishes or undoes operations whose server is no longer live.
ALTER TABLE workspaces ADD COLUMN op_server TEXT;
