// Entry point of the integrity-target command; the real CLI lands with the host work.
return 0;
