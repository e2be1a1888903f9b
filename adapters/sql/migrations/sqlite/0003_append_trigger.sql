-- A send is one INSERT into messages, which takes the next position of both users' streams
-- from stream_heads; this trigger moves both heads and the conversation's updated_at along
-- with it, inside the same statement. (One statement per send instead of three: the writer
-- of the SQLite store runs every statement through a worker thread, and the hand-offs, not
-- SQLite, were what a send spent its time on.) An insert skipped by ON CONFLICT fires nothing.
-- MAX keeps heads and timestamps from moving back, whatever order rows arrive in.
CREATE TRIGGER messages_move_streams AFTER INSERT ON messages
BEGIN
    INSERT INTO stream_heads (user_id, position)
    VALUES (NEW.sender_id, NEW.sender_position), (NEW.receiver_id, NEW.receiver_position)
    ON CONFLICT (user_id) DO UPDATE SET position = MAX(stream_heads.position, excluded.position);
    UPDATE conversations SET updated_at = MAX(updated_at, NEW.created_at)
    WHERE id = NEW.conversation_id;
END;
