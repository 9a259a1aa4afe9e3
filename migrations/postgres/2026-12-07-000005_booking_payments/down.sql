DROP TABLE booking_payments;
