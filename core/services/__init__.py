"""The only writers. Every public function takes the acting user, checks the permission,
does the work and writes one audit event in the same transaction."""
