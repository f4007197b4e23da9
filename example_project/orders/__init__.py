"""Orders: customers place orders that the "process_order" workflow carries out."""
