"""What a broker with a state store needs, whichever the broker: the store adapter
(:mod:`.store`) and the outbox for a producer that dies between storing and publishing
(:mod:`.outbox`), and what they need of the broker (:mod:`.publisher`)."""
