DROP TABLE payment_refunds;
DROP TABLE booking_payments;
