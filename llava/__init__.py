"""HiDrop-LLaVA: LLaVA-1.5 with HiDrop vision-token reduction."""
